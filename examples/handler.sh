#!/bin/sh
# An example jobd handler: the client connection is stdin and stdout.
# It greets the client with the tcpserver environment jobd sets, then
# answers every line it reads until the client closes.
echo "hello $TCPREMOTEIP:$TCPREMOTEPORT ($PROTO), job $JOBD_JOB_ID on slot $JOBD_SLOT"
while IFS= read -r line; do
    echo "echo: $line"
done
