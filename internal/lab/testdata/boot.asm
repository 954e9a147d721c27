; GGnet demo boot sector: a tiny OS that keeps using its disk.
;
; At boot it reads LBA 1 through the BIOS disk services (iPXE's SAN drive),
; increments the boot counter in its first word, writes it back, and prints
; "GGNET-BOOT-OK count=<n>" on COM1. Then, forever, about twice a second:
; it reads LBA 1, increments the 32-bit tick counter at offset 4, writes the
; sector, reads it back into another buffer, compares the two, and prints
; "GGNET-TICK <n>". Each tick starts from what the disk holds, so the ticks a
; VM prints are consecutive only if every acknowledged write stayed on its
; disk. A failed int 13h call is retried after a pause, as an OS's initiator
; would, and "GGNET-IO-RETRY <status>" is printed once per failure streak; a
; read-back that differs prints "GGNET-VERIFY-FAIL" and the tick is written
; again.
;
; Assemble: nasm -f bin -o boot.bin boot.asm
bits 16
org 0x7c00

BUF equ 0x8000                  ; LBA 1 as read and written
CHK equ 0x8200                  ; LBA 1 read back

start:
    cli
    xor ax, ax
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov sp, 0x7c00
    sti
    cld
    mov [drive], dl
    mov bx, BUF
    mov ah, 0x02                ; read
    call io
    inc word [BUF]
    mov ah, 0x03                ; write
    call io
    mov si, bootmsg
    call puts
    movzx eax, word [BUF]
    call putdec

tick:
    call pause
    mov bx, BUF
    mov ah, 0x02                ; read what the disk holds
    call io
    inc dword [BUF+4]
.write:
    mov bx, BUF
    mov ah, 0x03
    call io
    mov bx, CHK
    mov ah, 0x02                ; read it back
    call io
    mov si, BUF
    mov di, CHK
    mov cx, 256
    repe cmpsw
    je .ok
    mov si, badmsg
    call puts
    jmp .write
.ok:
    mov si, tickmsg
    call puts
    mov eax, [BUF+4]
    call putdec
    jmp tick

io:                             ; AH = 2 (read) or 3 (write) C0 H0 S2 (LBA 1) at 0000:BX, until it succeeds
    mov [op], ah
.try:
    push bx
    mov ah, [op]
    mov al, 1
    mov cx, 0x0002
    xor dh, dh
    mov dl, [drive]
    int 0x13
    pop bx
    jnc .done
    cmp byte [retrying], 0
    jne .again
    mov byte [retrying], 1
    push bx
    mov si, retrymsg
    call puts
    movzx eax, ah
    call putdec
    pop bx
.again:
    call pause
    jmp .try
.done:
    mov byte [retrying], 0
    ret

pause:                          ; about half a second: 9 BIOS timer ticks (18.2 Hz)
    push ax
    push dx
    mov dx, [0x046c]
.wait:
    sti                         ; iPXE's int 13h may return with interrupts off
    hlt
    mov ax, [0x046c]
    sub ax, dx
    cmp ax, 9
    jb .wait
    pop dx
    pop ax
    ret

puts:                           ; the string at SI to COM1
    lodsb
    test al, al
    jz .done
    call putc
    jmp puts
.done:
    ret

putc:                           ; AL to COM1
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

putdec:                         ; EAX as decimal, then CR LF (clobbers EBX, ECX, EDX)
    xor cx, cx
    mov ebx, 10
.div:
    xor edx, edx
    div ebx
    push dx
    inc cx
    test eax, eax
    jnz .div
.out:
    pop ax
    add al, '0'
    call putc
    loop .out
    mov si, crlf
    jmp puts

bootmsg:  db 13, 10, "GGNET-BOOT-OK count=", 0
tickmsg:  db "GGNET-TICK ", 0
retrymsg: db "GGNET-IO-RETRY ", 0
badmsg:   db "GGNET-VERIFY-FAIL", 13, 10, 0
crlf:     db 13, 10, 0
drive:    db 0
op:       db 0
retrying: db 0
times 510-($-$$) db 0
dw 0xaa55
