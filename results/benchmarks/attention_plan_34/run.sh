#!/usr/bin/env bash
# old (55d3b7e, /tmp/before34) and new (60aa996, /tmp/new34) benchmark_long, alternating per scheme, one thread
set -u
export OMP_NUM_THREADS=1
PY=/work/main/.venv/bin/python
for s in none sinusoidal learned cpe rope_partial xpos fope alibi alibi_learned t5 kerple_log kerple_power sandwich fire shaw shaw_kv transformer_xl deberta cope; do
  for v in old new; do
    dir=/tmp/before34; [ $v = new ] && dir=/tmp/new34
    (cd $dir && PYTHONPATH=$dir/src $PY scripts/benchmark_long.py --schemes $s --lengths 2048,8192 --repeats 1 --out /tmp/b34/${v}_$s.json > /tmp/b34/${v}_$s.txt 2>&1)
  done
  echo "$s done $(date +%T)"
done
echo ALL DONE
