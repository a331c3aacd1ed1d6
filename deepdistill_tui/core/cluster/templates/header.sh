# Written by `deepdistill-tui cluster-export`; edit env.sh rather than this file.
set -euo pipefail
@@cd
# shellcheck source=SCRIPTDIR@@up/env.sh
source ./env.sh
