# Shared by the launchers (sourced from the repository root).

# add_overrides LAUNCHER ARG...: appends each ARG to the array `args`, turning KEY=VALUE into
# --config.KEY=VALUE and keeping --flags; anything else is an error naming LAUNCHER.
add_overrides() {
  local name=$1 a
  shift
  for a in "$@"; do
    case "$a" in
      --*) args+=("$a") ;;
      *=*) args+=("--config.$a") ;;
      *) echo "$name: unexpected argument '$a' (want KEY=VALUE or --flag)" >&2; exit 2 ;;
    esac
  done
}

# usage_error LAUNCHER USAGE MESSAGE: MESSAGE and the usage line on stderr, exit status 2.
usage_error() {
  echo "$1: $3" >&2
  echo "usage: $2" >&2
  exit 2
}

# is_override ARG: whether ARG looks like a config override (a dotted key, then '='), which a
# path such as runs/lr=2e-4 does not.
is_override() {
  [[ "$1" =~ ^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)+= ]]
}

# check_args LAUNCHER USAGE CONFIG WORKDIR: CONFIG must be an existing file (a ':ARG' suffix for
# the config's get_config is allowed) and WORKDIR a path, neither of them a --flag or KEY=VALUE.
check_args() {
  local name=$1 usage=$2 config=$3 workdir=$4
  if [ -z "$config" ] || [[ "$config" == -* ]] || is_override "$config"; then
    usage_error "$name" "$usage" "CONFIG must be a config file, got '$config'"
  fi
  [ -f "${config%%:*}" ] || usage_error "$name" "$usage" "config file not found: '${config%%:*}'"
  if [ -z "$workdir" ] || [[ "$workdir" == -* ]] || is_override "$workdir"; then
    usage_error "$name" "$usage" "WORKDIR must be a directory path, got '$workdir'"
  fi
}

# check_count LAUNCHER USAGE WHAT VALUE: VALUE must be a positive integer.
check_count() {
  case "$4" in
    ""|*[!0-9]*|0*) usage_error "$1" "$2" "$3 must be a positive integer, got '$4'" ;;
  esac
}

# The repository's .venv Python when there is one, else `python`.
PY=python
if [ -x .venv/bin/python ]; then PY=.venv/bin/python; fi
