#!/bin/sh
# An exec activation client (contract §3) for the tests: a site's own activation proxy
# written as nothing but a script. Its behaviour comes from files in $PLUGIN_DIR:
#   mode      "ok" (default), "fail N" (exit 75 with retryAfter 1, N times), "permanent", "sleep",
#             "echo" (exit 75, repeating the code it was sent: lower case in the message,
#             without dashes in the error, as is on its standard error),
#             and clients that misbehave: "closed-hang" (closes its output, keeps running),
#             "background" (answers, exits, a background child keeps its output open),
#             "orphan" (answers, exits, leaves a child that holds nothing of it),
#             "huge BYTES" (refuses with a message of BYTES), "setsid" (answers, leaving a
#             child in a session of its own that exits a second later), "setsid-long" (the
#             same, for 300 s), "fds" (answers, its open descriptors listed in $PLUGIN_DIR/fds)
#   key       the key to answer with
# Each request is appended to $PLUGIN_DIR/requests, with the environment it received;
# the last attempt's arguments and environment are in $PLUGIN_DIR/argv and env.
set -eu
dir=${PLUGIN_DIR:?}
request=$(cat)
# What a process listing or /proc would show of this client: its arguments and environment.
printf '%s\n' "$0" "$@" >"$dir/argv"
env >"$dir/env"
printf '%s url=%s timeout=%s\n' "$request" "$LICENSE_AGENT_URL" "$LICENSE_AGENT_TIMEOUT_SEC" >>"$dir/requests"
mode=$(cat "$dir/mode" 2>/dev/null || echo ok)
case "$mode" in
  fail*)
    left=${mode#fail }
    if [ "$left" -gt 0 ]; then
      echo "fail $((left - 1))" >"$dir/mode"
      echo "upstream busy" >&2
      echo '{"error": "upstream_busy", "message": "try later", "retryAfter": 1}'
      exit 75
    fi ;;
  permanent)
    echo '{"error": "code_blocked", "message": "blocked by the vendor"}'
    exit 1 ;;
  echo)
    code=$(printf '%s' "$request" | sed -n 's/.*"activationCode" *: *"\([^"]*\)".*/\1/p')
    echo "upstream refused $code" >&2
    printf '{"error": "busy_%s", "message": "the code %s is busy", "retryAfter": 1}\n' \
      "$(printf '%s' "$code" | tr -d -)" "$(printf '%s' "$code" | tr A-Z a-z)"
    exit 75 ;;
  sleep)
    exec sleep 30 ;;
  closed-hang)
    echo $$ >"$dir/pids"
    exec >&- 2>&-
    exec sleep 30 ;;
  background)
    sleep 30 &
    echo "$$ $!" >"$dir/pids" ;;
  orphan)
    sleep 30 </dev/null >/dev/null 2>&1 &
    echo "$$ $!" >"$dir/pids" ;;
  huge*)
    head -c "${mode#huge }" /dev/zero | tr '\0' 'm' >"$dir/message"
    printf '{"error": "code_blocked", "message": "%s"}\n' "$(cat "$dir/message")"
    exit 1 ;;
  setsid)
    setsid sh -c 'sleep 1' </dev/null >/dev/null 2>&1 &
    echo "$$ $!" >"$dir/pids" ;;
  setsid-long)
    setsid sleep 300 </dev/null >/dev/null 2>&1 &
    echo "$$ $!" >"$dir/pids" ;;
  fds)
    ls -l "/proc/$$/fd" >"$dir/fds" ;;
esac
printf '{"key": "%s"}\n' "$(cat "$dir/key")"
