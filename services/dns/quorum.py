"""Member health from several vantage points: moved to `shared.quorum`, so that the home
watcher (the serving members in policy status) combines verdicts exactly as the DNS does."""

from shared.quorum import MAJORITY as MAJORITY
from shared.quorum import QUORUM_HELP as QUORUM_HELP
from shared.quorum import HealthBook as HealthBook
from shared.quorum import Heartbeat as Heartbeat
from shared.quorum import Quorum as Quorum
from shared.quorum import State as State
from shared.quorum import Verdict as Verdict
from shared.quorum import Written as Written
from shared.quorum import combine as combine
from shared.quorum import decide as decide
