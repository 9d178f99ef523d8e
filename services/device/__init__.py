"""The device agent: enroll, then take part in rounds (train, mask, upload, unmask)."""
