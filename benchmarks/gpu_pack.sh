#!/bin/bash
# Issue 18's packing measurement alone (a second, shorter device call after gpu_run.sh):
# a 6-run MNIST grid (r = 1, 3 x seeds 0, 1, 2; full MNIST, 1 epoch, bf16) one after another,
# then packed with --jobs-per-gpu 6 (eager step), then packed with the CUDA-graphed step.
# Same layout as gpu_run.sh; results: $OUT/pack_log.txt and $OUT/pack2.txt.
G=${G:-$PWD/.gpu_deps}
S=$G/src
D=/tmp/data/MNIST/raw
E=$(($(date +%s) + ${BUDGET_S:-215}))
export PYTHONUNBUFFERED=1
T() {
	local left=$((E - $(date +%s)))
	[ "$left" -gt "$1" ] && left=$1
	[ "$left" -gt 5 ] && timeout -k 5 "$left" "${@:2}"
}
{
	python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site "$G"/whl/*.whl
	cd "$S" || exit 1
	[ -e capsroute/conf ] || ln -s ../conf capsroute/conf
	export PYTHONPATH=$S:/tmp/site CAPSROUTE_DATA=/tmp/data
	mkdir -p $D
	for f in "$G"/mnist/*.gz; do gunzip -c "$f" >$D/"$(basename "$f" .gz)"; done
	date -u
	T 30 python3 -m pytest -q -p no:cacheprovider tests/study/test_sweep_gpu.py
	C="python3 -m capsroute"
	P="--iters 1,3 --seeds 0,1,2 dataset.root=/tmp/data train.epochs=1 train.precision=bf16"
	P="$P train.progress=false out_root=/tmp/pk"
	t0=$(date +%s.%N)
	T 90 $C sweep $P --name seq >/tmp/seq.log 2>&1
	t1=$(date +%s.%N)
	T 55 $C sweep $P --name packed --launcher joblib --jobs-per-gpu 6 >/tmp/packed.log 2>&1
	t2=$(date +%s.%N)
	T 50 $C sweep $P train.cuda_graph=true --name packed_graph --launcher joblib --jobs-per-gpu 6 >/tmp/pg.log 2>&1
	t3=$(date +%s.%N)
	tail -n 4 /tmp/seq.log /tmp/packed.log /tmp/pg.log
	grep -ih "mps\|error" /tmp/packed.log /tmp/pg.log | head -20
	python3 benchmarks/pack_summary.py /tmp/pk/sweeps "$t0" "$t1" "$t2" "$t3" | tee "$OUT"/pack2.txt
	echo "== end $(date -u)"
} 2>&1 | tee "$OUT"/pack_log.txt
