"""The approval lifecycle: fingerprints, redacted previews, and the gate for require_approval calls."""
