#!/usr/bin/env bash
# bash deploy/offline_run.sh params/X.yaml: every notebook on a machine without internet (a GPU one:
# gpu_small), from what deploy/offline_bundle.py packed into .offline/ (README, "Running at full scale").
# Installs the carried wheels once (into $MPO_SITE), runs the pipeline within $MPO_PIPELINE_SECONDS (a
# finished stage is reused, so running this again picks up where a stopped run ended), then copies the
# report's tables and figures, with the device's name, to figures/<X>/. With $OUT set, the run directory
# (less weights and checkpoints) is packed there.
set -euo pipefail
cd "$(dirname "$0")/.."
params=$1 name=$(basename "$1" .yaml)
bundle=$(cd "${MPO_BUNDLE:-.offline}" && pwd)
site=${MPO_SITE:-/tmp/mpo_site}
run_dir=runs/$name
shopt -s nullglob

# files cut into parts by --split-mib: name.000, name.001, ... -> name (every part must be here)
while IFS= read -r -d '' first; do
    whole=${first%.000} parts=("${first%.000}".[0-9][0-9][0-9])
    cat "${parts[@]}" > "$whole.joining"
    mv "$whole.joining" "$whole"
    rm "${parts[@]}"
done < <(find "$bundle" -name '*.000' -print0)
wheels=("$bundle"/wheels/*.whl "$bundle"/model/*.whl)
if [ "$(cat "$site/.installed" 2>/dev/null)" != "$(basename -a "${wheels[@]}")" ]; then  # a new bundle: reinstall
    python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$site" "${wheels[@]}"
    basename -a "${wheels[@]}" > "$site/.installed"
fi
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}" MPO_DATA_DIR="$bundle/data" PYTHONUNBUFFERED=1 \
       HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python3 -m pip check || true  # the target's own packages against the carried ones' requirements: a lead, not a stop

device=$(python3 -c "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'CPU')")
echo "device: $device; torch $(python3 -c 'import torch; print(torch.__version__)')"
started=$(date +%s) status=0
timeout "${MPO_PIPELINE_SECONDS:-540}" python3 -m mpo_lib pipeline --params "$params" --run-dir "$run_dir" \
    || status=$?
seconds=$(( $(date +%s) - started ))
echo "pipeline: exit $status after $seconds s"
if [ -n "${OUT:-}" ]; then
    tar -czf "$OUT/${name}_run.tar.gz" --exclude='*.safetensors' --exclude='*.pt' --exclude='checkpoint*' "$run_dir" \
        || echo "packing $run_dir into \$OUT failed" >&2
fi
[ "$status" -eq 0 ] || exit "$status"

mkdir -p "figures/$name"
figures=("$run_dir"/figures/*.png)
cp "${figures[@]}" "figures/$name/"
{ echo "One $device, $(date -u +%F): \`bash deploy/offline_run.sh $params\`, $seconds s in its last call (stages"
  echo "finished by an earlier call were reused; the compute table has every stage's own time)."
  echo; cat "$run_dir/figures/tables.md"; } > "figures/$name/tables.md"
