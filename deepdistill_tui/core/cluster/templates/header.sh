# Written by `deepdistill-tui cluster-export`; edit env.sh rather than this file.
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
# shellcheck source=SCRIPTDIR/../env.sh
source ./env.sh
