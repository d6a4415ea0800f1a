from rest_framework.throttling import AnonRateThrottle


class SignupThrottle(AnonRateThrottle):
    """Sign-ups per client address; the rate is ``DEFAULT_THROTTLE_RATES["signup"]``.
    Used by the browser form too: DRF's throttles need only ``user`` and ``META``."""

    scope = "signup"
