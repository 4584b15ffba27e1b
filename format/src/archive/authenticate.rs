//! Authentication of members (MAC-*, V4-*).
