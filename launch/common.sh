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

# The repository's .venv Python when there is one, else `python`.
PY=python
if [ -x .venv/bin/python ]; then PY=.venv/bin/python; fi
