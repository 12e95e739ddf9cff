//! The entry point of the `netlink_reply` fuzz target
//! (`fuzz/fuzz_targets/netlink_reply.rs`), built only with the `fuzzing`
//! feature: everything this crate parses from the kernel, on arbitrary
//! bytes.

use crate::conntrack;
use crate::elements::{self, SetContents, SetId};
use crate::netlink;

/// Parses `data` as one reply datagram of the kernel, every way the driver
/// reads replies: netlink message headers, the status of an error or done
/// message, each message as a set-element dump (and its elements' keys as
/// every kind of set) and as a conntrack dump entry. Malformed input is an
/// error, never a panic.
pub fn parse_reply(data: &[u8]) {
    for m in netlink::messages(data) {
        let Ok(m) = m else {
            break;
        };
        let _ = m.status();
        let _ = (m.is_error(), m.is_done(), m.dump_interrupted());
        let mut raw = Vec::new();
        if elements::parse_elements(m, &mut raw).is_ok() {
            for r in raw {
                for set in SetId::FIXED
                    .into_iter()
                    .chain([SetId::Block4Net(24), SetId::Block6Net(64)])
                {
                    let _ = elements::decode(set, r.clone(), &mut SetContents::default());
                }
            }
        }
        let _ = conntrack::parse_entry(m.payload);
    }
}
