"""The lab: real servers on 127.0.0.1 standing in for the production system.

Used by the tests, the benchmarks and the demo (`python -m lab.demo`). Everything listens on
loopback only, on free ports, in temporary directories, and is stopped by whoever started it.

The lab is not part of the product: it is not in the wheel or the image, nothing in `agent/`,
`checks/`, `exporters/` or `alerts/` imports it, and it runs from a checkout only. It reads the
shipped files it runs (the Prometheus and Alertmanager configs, the rules, the monitoring role)
from the checkout, through `REPO`.
"""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
"""The root of the checkout the lab runs from."""
