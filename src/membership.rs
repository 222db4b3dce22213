//! Cluster membership: which nodes form the cluster, in which configuration, and where
//! that configuration's log starts.
//!
//! A cluster starts in configuration 1 with the members given by `--peers`. A membership
//! change (add, remove, replace) is decided in the log as an OmniPaxos stop sign that seals
//! configuration `c` and names configuration `c + 1`, with the members' addresses as its
//! metadata. Every node applies it like any entry: the state machine records the new
//! [`Membership`] atomically with the applied index, so the configuration in force is
//! durable, travels with a state transfer, and is the same on every node. The new
//! configuration's OmniPaxos log is a fresh one; its local index 0 is the global index
//! [`Membership::base`] (the entry after the stop sign), so applied indexes keep counting
//! across configurations.
//!
//! Invariants: member ids are non-zero and unique, addresses unique; a change leaves at
//! least one member and changes at least one.

use crate::command::NodeId;
use crate::config::Member;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// The members of one configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    /// OmniPaxos configuration id (1 for the initial cluster).
    pub config_id: u32,
    /// Global log index of this configuration's first entry.
    pub base: u64,
    pub members: Vec<Member>,
}

impl Membership {
    /// The configuration a cluster starts in.
    pub fn initial(members: &[Member]) -> Membership {
        Membership {
            config_id: 1,
            base: 0,
            members: members.to_vec(),
        }
    }

    pub fn ids(&self) -> Vec<NodeId> {
        self.members.iter().map(|m| m.id).collect()
    }

    /// How many members are a majority.
    pub fn majority(&self) -> usize {
        self.members.len() / 2 + 1
    }

    pub fn contains(&self, id: NodeId) -> bool {
        self.members.iter().any(|m| m.id == id)
    }

    pub fn addr_of(&self, id: NodeId) -> Option<&str> {
        self.members
            .iter()
            .find(|m| m.id == id)
            .map(|m| m.addr.as_str())
    }

    /// The members after adding `add` and removing `remove`, checked.
    pub fn changed(&self, add: &[Member], remove: &[NodeId]) -> Result<Vec<Member>> {
        if add.is_empty() && remove.is_empty() {
            return Err(Error::invalid(
                "a membership change must add or remove a node",
            ));
        }
        for id in remove {
            if !self.contains(*id) {
                return Err(Error::invalid(format!(
                    "node {id} is not a member (members: {})",
                    self.describe()
                )));
            }
        }
        let mut members: Vec<Member> = self
            .members
            .iter()
            .filter(|m| !remove.contains(&m.id))
            .cloned()
            .collect();
        for m in add {
            if m.id == 0 {
                return Err(Error::invalid("node id 0 is reserved"));
            }
            if m.addr.is_empty() {
                return Err(Error::invalid(format!(
                    "node {} needs a peer address",
                    m.id
                )));
            }
            if members.iter().any(|x| x.id == m.id) {
                return Err(Error::invalid(format!("node {} is already a member", m.id)));
            }
            if let Some(x) = members.iter().find(|x| x.addr == m.addr) {
                return Err(Error::invalid(format!(
                    "address {} is already used by node {}",
                    m.addr, x.id
                )));
            }
            members.push(m.clone());
        }
        if members.is_empty() {
            return Err(Error::invalid("a cluster needs at least one member"));
        }
        members.sort_by_key(|m| m.id);
        Ok(members)
    }

    /// `1=addr,2=addr` for messages.
    pub fn describe(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}={}", m.id, m.addr))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The stop sign metadata naming `members`.
    pub fn encode_members(members: &[Member]) -> Vec<u8> {
        bincode::serialize(members).expect("members serialize")
    }

    /// The members a stop sign's metadata names; `ids`, the stop sign's OmniPaxos nodes,
    /// must be exactly what `paxos_nodes` makes of theirs (the node's rule: the members,
    /// with a witness beside a lone member, see `node::solo`).
    pub fn decode_members(
        metadata: Option<&[u8]>,
        ids: &[NodeId],
        paxos_nodes: fn(&[NodeId]) -> Vec<NodeId>,
    ) -> Result<Vec<Member>> {
        let members: Vec<Member> = bincode::deserialize(metadata.unwrap_or_default())
            .map_err(|e| Error::Internal(format!("stop sign without member addresses: {e}")))?;
        let mut got: Vec<NodeId> = paxos_nodes(&members.iter().map(|m| m.id).collect::<Vec<_>>());
        let mut want = ids.to_vec();
        got.sort_unstable();
        want.sort_unstable();
        if got != want {
            return Err(Error::Internal(format!(
                "stop sign names nodes {want:?} but addresses for {got:?}"
            )));
        }
        Ok(members)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(id: NodeId) -> Member {
        Member {
            id,
            addr: format!("127.0.0.1:{}", 7100 + id),
        }
    }

    #[test]
    fn changes_are_checked() {
        let cur = Membership::initial(&[m(1), m(2), m(3)]);
        assert_eq!(cur.changed(&[m(4)], &[]).unwrap().len(), 4);
        assert_eq!(cur.changed(&[m(4)], &[3]).unwrap(), vec![m(1), m(2), m(4)]);
        for (add, remove, why) in [
            (vec![], vec![], "must add or remove"),
            (vec![m(2)], vec![], "already a member"),
            (vec![], vec![9], "not a member"),
            (vec![], vec![1, 2, 3], "at least one"),
            (
                vec![Member {
                    id: 5,
                    addr: m(1).addr,
                }],
                vec![],
                "already used by node 1",
            ),
        ] {
            let err = cur.changed(&add, &remove).unwrap_err().to_string();
            assert!(err.contains(why), "{err}");
        }
    }

    #[test]
    fn stop_sign_metadata_round_trips_and_is_checked() {
        let members = vec![m(1), m(4)];
        let bytes = Membership::encode_members(&members);
        assert_eq!(
            Membership::decode_members(Some(&bytes), &[4, 1], <[NodeId]>::to_vec).unwrap(),
            members
        );
        assert!(Membership::decode_members(Some(&bytes), &[1, 2], <[NodeId]>::to_vec).is_err());
        assert!(Membership::decode_members(None, &[1], <[NodeId]>::to_vec).is_err());
    }
}
