//! qubes.xml (SPEC.md XML-*).
