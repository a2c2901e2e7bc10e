//! The Lease actor: holds a VM's network lease while the VM runs, answers
//! what it is, and re-ensures its TAP on request (one-for-one restartable:
//! a failure here never touches the VM). The lease itself outlives runs
//! (a VM keeps its address across stop/start) and is released by the
//! NetManager when the VM is removed.

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use std::sync::Arc;

use crate::netmgr::{Lease, NetManager};

pub enum LeaseMessage {
    Get(RpcReplyPort<Lease>),
    /// Re-create the TAP and rules if something outside removed them.
    Ensure,
}

pub struct LeaseActor;

pub struct LeaseArgs {
    pub net: Arc<NetManager>,
    pub lease: Lease,
}

pub struct LeaseState {
    net: Arc<NetManager>,
    lease: Lease,
}

impl Actor for LeaseActor {
    type Msg = LeaseMessage;
    type State = LeaseState;
    type Arguments = LeaseArgs;

    async fn pre_start(&self, _me: ActorRef<LeaseMessage>, a: LeaseArgs) -> Result<LeaseState, ActorProcessingErr> {
        Ok(LeaseState { net: a.net, lease: a.lease })
    }

    async fn handle(&self, _me: ActorRef<LeaseMessage>, msg: LeaseMessage, st: &mut LeaseState) -> Result<(), ActorProcessingErr> {
        match msg {
            LeaseMessage::Get(reply) => {
                let _ = reply.send(st.lease.clone());
            }
            LeaseMessage::Ensure => {
                st.lease = st.net.acquire(&st.lease.vm).await.map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    }
}
