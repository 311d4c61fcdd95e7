#!/usr/bin/env bash
# A metasam study on a SLURM allocation: a Ray head on the first node, a Ray worker on each of
# the others, then `metasam tune` on the head. Submit with `sbatch recipes/slurm.sh study.yaml`.
# The study's storage must be reachable from every node: PostgreSQL, or journal:FILE on the
# shared filesystem. Resubmitting the same script resumes the study (the storage is the record).
#SBATCH --job-name=metasam
#SBATCH --nodes=3
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=16
#SBATCH --gpus-per-node=4
#SBATCH --time=12:00:00
#SBATCH --output=metasam-%j.log
set -euo pipefail

study="${1:?usage: sbatch recipes/slurm.sh STUDY.yaml}"
source "${METASAM_ENV:-$HOME/metasam-env}/bin/activate"
# Ray's token authentication stays on: every node reads one token from the shared home
# (generated once; docs/cluster.md, "Authentication")
export RAY_AUTH_MODE=token
export RAY_AUTH_TOKEN_PATH="${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}"
[ -s "$RAY_AUTH_TOKEN_PATH" ] || ray get-auth-token --generate >/dev/null

nodes=($(scontrol show hostnames "$SLURM_JOB_NODELIST"))
head="${nodes[0]}"
head_ip=$(srun --nodes=1 --ntasks=1 -w "$head" hostname --ip-address | awk '{print $1}')
port=6379

# the by-hand recipe of docs/cluster.md, once per node (--block keeps each srun step alive)
srun --nodes=1 --ntasks=1 -w "$head" \
  ray start --head --port="$port" --node-ip-address="$head_ip" \
  --num-cpus="$SLURM_CPUS_PER_TASK" --num-gpus="${SLURM_GPUS_ON_NODE:-0}" \
  --disable-usage-stats --block &
sleep 20
for node in "${nodes[@]:1}"; do
  srun --nodes=1 --ntasks=1 -w "$node" \
    ray start --address="$head_ip:$port" \
    --num-cpus="$SLURM_CPUS_PER_TASK" --num-gpus="${SLURM_GPUS_ON_NODE:-0}" \
    --disable-usage-stats --block &
done
sleep 20

# metasam waits (METASAM_RESOURCE_WAIT, default 60 s) for a node that fits a trial to join
metasam tune "$study" --address "$head_ip:$port"
status=$?
ray stop || true
exit "$status"
