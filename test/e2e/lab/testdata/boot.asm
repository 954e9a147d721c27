; GGnet demo boot sector: reads LBA 1 through the BIOS disk services (iPXE's
; SAN drive), increments the boot counter in its first word, writes it back,
; and prints "GGNET-BOOT-OK count=<n>" on COM1.
bits 16
org 0x7c00
start:
    cli
    xor ax, ax
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov sp, 0x7c00
    sti
    mov [drive], dl
    mov ah, 0x02        ; read
    call disk
    jc fail
    inc word [0x8000]
    mov ah, 0x03        ; write
    call disk
    jc fail
    mov si, msg
    call puts
    mov ax, [0x8000]
    call putdec
    mov si, crlf
    call puts
hang:
    hlt
    jmp hang
fail:
    mov si, failmsg
    call puts
    jmp hang
disk:                   ; AH = 2 (read) or 3 (write) one sector: C0 H0 S2 -> 0000:8000
    mov al, 1
    mov cx, 0x0002
    xor dh, dh
    mov dl, [drive]
    mov bx, 0x8000
    int 0x13
    ret
puts:
    lodsb
    test al, al
    jz .done
    call putc
    jmp puts
.done:
    ret
putc:                   ; AL to COM1
    push dx
    push ax
    mov dx, 0x3fd
.wait:
    in al, dx
    test al, 0x20
    jz .wait
    pop ax
    mov dx, 0x3f8
    out dx, al
    pop dx
    ret
putdec:                 ; AX as decimal
    mov cx, 0
    mov bx, 10
.div:
    xor dx, dx
    div bx
    push dx
    inc cx
    test ax, ax
    jnz .div
.out:
    pop ax
    add al, '0'
    call putc
    loop .out
    ret
msg:     db 13, 10, "GGNET-BOOT-OK count=", 0
failmsg: db 13, 10, "GGNET-BOOT-FAIL disk", 13, 10, 0
crlf:    db 13, 10, 0
drive:   db 0
times 510-($-$$) db 0
dw 0xaa55
