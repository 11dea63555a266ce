"""livecc: fast training and real-time streaming of video LLMs on ASR words interleaved with frames."""

__version__ = "0.1.0"
__all__ = ["__version__"]
