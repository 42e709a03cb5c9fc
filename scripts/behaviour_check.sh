#!/usr/bin/env bash
# Same seed and config before and after a change: debug=fast runs of every quantizer and KD method and
# the make-run job, one torch thread each, into /tmp/beh/<label>; compare two labels with
#   python scripts/compare_runs.py /tmp/beh/<before> /tmp/beh/<after>
# usage: bash scripts/behaviour_check.sh LABEL WORKTREE   (WORKTREE: e.g. from git worktree add --detach /tmp/wt_a <commit>)
# The make-run job reads the cached default teacher from $DAQKD_CACHE_MAKERUN (default: ./.cache of this checkout).
set -u
label=$1; wt=$2
py=${PYTHON:-$(cd "$(dirname "$0")/.." && pwd)/.venv/bin/python}
makerun_cache=${DAQKD_CACHE_MAKERUN:-$(cd "$(dirname "$0")/.." && pwd)/.cache}
mkdir -p /tmp/beh/$label
for spec in quantizer=ewgs quantizer=lsq quantizer=pact quantizer=dorefa quantizer=fp kd=at kd=cc kd=crd kd=dkd kd=fitnet kd=kd \
            kd=nst kd=pkt kd=rkd kd=sp kd=vid kd=sqakd kd=none; do
  name=$(echo $spec | tr '=' '_')
  (cd /tmp && OMP_NUM_THREADS=1 PYTHONPATH=$wt DAQKD_CACHE=/tmp/beh/cache_$label $py -m daqkd.run debug=fast $spec speed.threads=1 \
     hydra.run.dir=/tmp/beh/$label/$name > /tmp/beh/$label.$name.log 2>&1; echo "$name rc=$?" >> /tmp/beh/$label.status)
done
(cd /tmp && OMP_NUM_THREADS=1 PYTHONPATH=$wt DAQKD_CACHE=$makerun_cache $py -m daqkd.run speed.threads=1 \
   hydra.run.dir=/tmp/beh/$label/makerun > /tmp/beh/$label.makerun.log 2>&1; echo "makerun rc=$?" >> /tmp/beh/$label.status)
echo DONE >> /tmp/beh/$label.status
