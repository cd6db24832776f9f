#!/bin/sh
# An HTTP/1.0 handler for jobd: reads the request line and headers, answers
# with a Content-Length, and exits. Clients such as curl close as soon as
# they have the body, often before this script has exited: jobd records
# such a job as done (see README, "When a FIN cancels").
#   jobd --script examples/http-1.0.sh &   curl -s http://127.0.0.1:7000/
IFS= read -r request
while IFS= read -r header; do
    case "$header" in "" | "$(printf '\r')") break ;; esac
done
body="hello from job $JOBD_JOB_ID (${request%% HTTP*})"
printf 'HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %s\r\n\r\n%s' "${#body}" "$body"
