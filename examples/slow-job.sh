#!/bin/sh
# A long example job: reads one line (a number of seconds, default 30),
# then works for that long, printing progress, with a child process of its
# own. If the client hangs up, jobd cancels the whole job.
IFS= read -r secs || secs=30
case "$secs" in ''|*[!0-9]*) secs=30 ;; esac
sleep "$secs" &
i=0
while [ "$i" -lt "$secs" ]; do
    i=$((i + 1))
    echo "working $i/$secs"
    sleep 1
done
wait
echo "done after $secs s"
