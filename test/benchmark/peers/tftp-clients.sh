#!/bin/bash
# Runs inside netns pb-cli on CPU1. usage: clients.sh single <client> <blksize> [windowsize]
#                                         clients.sh conc <N> <blksize>
S=198.51.100.1; F=boot-1MiB.bin; SZ=1048576; D=$(mktemp -d /tmp/ggnet-bench/tftp/dl.XXXX)
case $1 in
single)
  t0=$(date +%s.%N)
  if [ $2 = curl ]; then
    o=""; [ $3 != 512 ] && o="--tftp-blksize $3"
    curl -s $o -o $D/f tftp://$S/$F; rc=$?
  else
    o=(--option "blksize $3"); [ -n "$4" ] && o+=(--option "windowsize $4")
    atftp "${o[@]}" -g -r $F -l $D/f $S >/dev/null 2>&1; rc=$?
  fi
  t1=$(date +%s.%N); sz=$(stat -c %s $D/f 2>/dev/null || echo 0)
  echo "rc=$rc bytes=$sz secs=$(echo "$t1 - $t0" | bc -l | sed 's/^\./0./') MBps=$(echo "$sz / ($t1 - $t0) / 1000000" | bc -l | cut -c1-6)";;
conc)   # one curl process, N transfers in parallel (libcurl multi)
  N=$2; o=""; [ $3 != 512 ] && o="--tftp-blksize $3"
  for i in $(seq 1 $N); do echo "url = \"tftp://$S/$F\""; echo "output = \"$D/f$i\""; done > $D/cfg
  t0=$(date +%s.%N)
  curl -s -S --no-progress-meter --parallel --parallel-max 300 --max-time 60 $o -K $D/cfg; rc=$?
  t1=$(date +%s.%N)
  ok=0; for i in $(seq 1 $N); do [ "$(stat -c %s $D/f$i 2>/dev/null)" = $SZ ] && ok=$((ok+1)); done
  secs=$(echo "$t1 - $t0" | bc -l)
  echo "N=$N curl_rc=$rc ok=$ok failed=$((N-ok)) secs=$(printf %.3f $secs) aggregate_MBps=$(echo "$ok * $SZ / $secs / 1000000" | bc -l | cut -c1-6)";;
concproc)   # N separate curl processes
  N=$2; o=""; [ $3 != 512 ] && o="--tftp-blksize $3"
  t0=$(date +%s.%N)
  for i in $(seq 1 $N); do ( curl -s --max-time 60 $o -o $D/f$i tftp://$S/$F; echo $? > $D/rc$i ) & done
  wait; t1=$(date +%s.%N)
  ok=0; for i in $(seq 1 $N); do [ "$(cat $D/rc$i)" = 0 ] && [ "$(stat -c %s $D/f$i 2>/dev/null)" = $SZ ] && ok=$((ok+1)); done
  secs=$(echo "$t1 - $t0" | bc -l)
  echo "N=$N ok=$ok failed=$((N-ok)) secs=$(printf %.3f $secs) aggregate_MBps=$(echo "$ok * $SZ / $secs / 1000000" | bc -l | cut -c1-6)";;
esac
rm -rf $D
