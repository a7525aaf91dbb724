"""Real-time clocks: the Goldfish RTC."""

from kvmpy.hw.rtc.goldfish_rtc import GoldfishRtc, ManualScheduler

__all__ = ["GoldfishRtc", "ManualScheduler"]
