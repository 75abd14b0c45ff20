"""The bottom layer: what every package may import (the error type for bad settings)."""
