# Stage times for .ci/run and scripts/test (sourced): `stage NAME` ends the running stage,
# printing how long it took, and starts NAME; `stage_end` ends it; `stage_table TITLE`
# prints every stage's time, so that the next slowdown is visible in CI's log.
_stage_names=()
_stage_seconds=()
_stage_name=""
_stage_start=""

stage_end() {
  [ -n "$_stage_name" ] || return 0
  local seconds
  seconds=$(awk -v a="$_stage_start" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
  _stage_names+=("$_stage_name")
  _stage_seconds+=("$seconds")
  echo "== $_stage_name: ${seconds} s"
  _stage_name=""
}

stage() {
  stage_end
  _stage_name=$1
  _stage_start=$EPOCHREALTIME
  echo "== $1"
}

stage_table() {
  stage_end
  local i total=0
  echo "== $1"
  for i in "${!_stage_names[@]}"; do
    printf '   %-52s %7s s\n' "${_stage_names[$i]}" "${_stage_seconds[$i]}"
    total=$(awk -v a="$total" -v b="${_stage_seconds[$i]}" 'BEGIN { printf "%.1f", a + b }')
  done
  printf '   %-52s %7s s\n' "in all" "$total"
}
