#!/bin/bash
# Issue 18's measurements in one device call (about 7 minutes on one GPU).
# Layout: $G/whl (hydra-core, omegaconf, antlr4, joblib launcher wheels), $G/mnist/*.gz (raw
# MNIST IDX, gzipped), $G/src (this repository's tracked files). Results go to $OUT:
# log.txt, bench.json, profile.txt, pack.txt, metrics.csv, summary.json.
# Every section has its own cap, so the whole script ends by $BUDGET_S seconds.
G=${G:-$PWD/.gpu_deps}
S=$G/src
D=/tmp/data/MNIST/raw
E=$(($(date +%s) + ${BUDGET_S:-395}))
export PYTHONUNBUFFERED=1
# T CAP CMD...: run CMD for at most CAP seconds, and never past the end of the budget
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
	nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,utilization.gpu,compute_mode --format=csv
	python3 -c "import torch, hydra; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'hydra', hydra.__version__)"
	C="python3 -m capsroute"
	B="bench --device cuda --batch-size 128 --steps 15 --warmup 3 --variants eager,graph"
	echo "== bench: eager (today's step) vs graph, r=1,3,5, bf16 and fp32, defaults (deterministic, no TF32)"
	T 75 $C $B --iters 1,3,5 --precision bf16,fp32 --json /tmp/b1.json
	echo "== bench: r=3 bf16, train.deterministic=false (cuDNN autotuning)"
	T 30 $C $B --iters 3 --precision bf16 --json /tmp/b2.json train.deterministic=false
	echo "== bench: r=3 fp32, train.deterministic=false train.tf32=true"
	T 30 $C $B --iters 3 --precision fp32 --json /tmp/b3.json train.deterministic=false train.tf32=true
	python3 -c "import json,sys,os; print(json.dumps([r for f in sys.argv[1:] if os.path.exists(f) for r in json.load(open(f))], indent=1))" /tmp/b1.json /tmp/b2.json /tmp/b3.json >"$OUT"/bench.json
	echo "== profile"
	T 35 python3 benchmarks/gpu_profile.py --iters 1,3,5 --precision bf16 --steps 10 | tee "$OUT"/profile.txt
	echo "== CUDA tests"
	T 50 python3 -m pytest -q -m "not slow" -p no:cacheprovider tests -k "cuda or graph or epoch_batches or sweep_gpu"
	echo "== pack: 6-run grid one after another, then --jobs-per-gpu 6"
	P="--iters 1,3 --seeds 0,1,2 dataset.root=/tmp/data dataset.train_size=20000 dataset.test_size=5000"
	P="$P train.epochs=2 train.precision=bf16 train.progress=false out_root=/tmp/pk"
	t0=$(date +%s.%N)
	T 70 $C sweep $P --name seq >/tmp/seq.log 2>&1
	t1=$(date +%s.%N)
	T 60 $C sweep $P --name packed --launcher joblib --jobs-per-gpu 6 >/tmp/packed.log 2>&1
	t2=$(date +%s.%N)
	tail -n 4 /tmp/seq.log /tmp/packed.log
	grep -i "mps" /tmp/packed.log
	python3 benchmarks/pack_summary.py /tmp/pk/sweeps "$t0" "$t1" "$t2" | tee "$OUT"/pack.txt
	echo "== paper_table1 r=3 with reconstruction, full MNIST, until the budget ends"
	R="experiment=paper_table1 routing.iterations=3 model.reconstruction=true dataset.root=/tmp/data"
	R="$R device=cuda train.precision=bf16 train.deterministic=false train.progress=false out_root=/tmp/o"
	T 9999 $C train $R train.cuda_graph=true run_name=t1
	[ -s /tmp/o/runs/t1/metrics.csv ] || T 9999 $C train $R run_name=t1
	cp /tmp/o/runs/t1/metrics.csv /tmp/o/runs/t1/summary.json "$OUT"/
	echo "== end $(date -u)"
} 2>&1 | tee "$OUT"/log.txt
