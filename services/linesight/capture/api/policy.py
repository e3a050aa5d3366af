"""Who may call a capture station: a trigger puts a part on record, so the PLC gateway's machine
account or a line operator at the station; profile and status are readable by anyone signed in."""

from __future__ import annotations

from linesight.common.identity.model import Role
from linesight.common.identity.policy import Policy

SERVICE = "linesight.v1.CaptureService"
TRIGGER = f"{SERVICE}/Trigger"
GET_STATION_PROFILE = f"{SERVICE}/GetStationProfile"
GET_STATUS = f"{SERVICE}/GetStatus"
# HTTP routes (capture/api/http.py)
HTTP_STATUS = "capture.status"

POLICY = Policy(
    rules={
        TRIGGER: {Role.SERVICE, Role.LINE_OPERATOR},
        GET_STATION_PROFILE: set(Role),
        GET_STATUS: set(Role),
        HTTP_STATUS: set(Role),
    }
)
