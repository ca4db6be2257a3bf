#!/usr/bin/env bash
# Compares two builds of `rbm` on the MovieLens-100K epoch, alternating them so that both meet
# the same minutes of a shared host (see docs/performance.md, session 21).
#
#   bench/ab.sh BIN_A BIN_B [ROUNDS] [RATINGS]
#
# RATINGS is the MovieLens-100K file; without it `rbm bench` uses the `rbm cf fetch` cache.
# Each round runs `BIN --json bench --skip-binary --skip-netflix --cf-epochs 30` with A, then
# B (about 2 s each). Printed per figure (batch 100 and 256, the median and the fastest epoch):
# both builds' medians and minima over the rounds, the median of B/A per round, and the rounds
# B won. On a calm host the fastest epoch varies by under 1 % between rounds.
set -euo pipefail
a=${1:?usage: bench/ab.sh BIN_A BIN_B [ROUNDS] [RATINGS]}
b=${2:?usage: bench/ab.sh BIN_A BIN_B [ROUNDS] [RATINGS]}
rounds=${3:-10}
ratings=()
[ $# -ge 4 ] && ratings=(--ratings "$4")
for _ in $(seq "$rounds"); do
  for side in A B; do
    bin=$a
    [ "$side" = B ] && bin=$b
    "$bin" --json bench "${ratings[@]}" --skip-binary --skip-netflix --cf-epochs 30 -q |
      python3 -c "
import json, sys
d = json.load(sys.stdin)
keys = ['ml100k_epoch_seconds', 'ml100k_fastest_epoch_seconds',
        'ml100k_epoch_seconds_batch256', 'ml100k_fastest_epoch_seconds_batch256']
if d.get(keys[0]) is None:
    sys.exit('bench/ab.sh: no MovieLens-100K case ran: pass RATINGS, or fetch it (rbm cf fetch)')
print('$side', *('%.4f' % (d[k] * 1e3) for k in keys))"
  done
done | python3 -c "
import statistics as st, sys
a, b = [], []
for line in sys.stdin:
    side, *v = line.split()
    (a if side == 'A' else b).append([float(x) for x in v])
if not a or not b:
    sys.exit('bench/ab.sh: no figures to compare')
names = ['b100 median', 'b100 fastest', 'b256 median', 'b256 fastest']
for j, name in enumerate(names):
    r = [y[j] / x[j] for x, y in zip(a, b)]
    print('%-12s A %.3f ms (min %.3f)  B %.3f ms (min %.3f)  B/A %.4f  B won %d of %d' % (
        name, st.median(x[j] for x in a), min(x[j] for x in a),
        st.median(y[j] for y in b), min(y[j] for y in b),
        st.median(r), sum(t < 1 for t in r), len(r)))
"
