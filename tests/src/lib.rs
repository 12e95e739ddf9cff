//! End-to-end tests of spa: client, green and red in separate network
//! namespaces, with real UDP, firewalls and services.
//!
//! Nothing here yet: the namespace tests arrive with the daemon issues
//! (`spa-server`, `red-relay`, and the tunnel). Until then the protocol is
//! tested in `proto-spec` (unit, property, flow and test-vector tests).
#![forbid(unsafe_code)]
