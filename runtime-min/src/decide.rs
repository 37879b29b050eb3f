//! One policy instance per worker thread, reused across requests.
//!
//! A thread instantiates the active module the first time it decides a request for it
//! (one instantiation per thread per activation and tier) and keeps the instance and a decision
//! buffer, so deciding a request allocates nothing: the request is copied into the
//! instance's memory and the decision read back into the reused buffer.

use std::cell::RefCell;

use edgepack_bundles::abi::Decision;
use edgepack_bundles::request::RequestParts;

use crate::activation::Active;
use crate::host::{HostError, PolicyInstance, Tier};

struct Slot {
    generation: u64,
    tier: Tier,
    instance: Option<PolicyInstance>,
    decision: Decision,
}

thread_local! {
    static SLOT: RefCell<Slot> = RefCell::new(Slot {
        generation: u64::MAX,
        tier: Tier::Quick,
        instance: None,
        decision: Decision::default(),
    });
}

/// Decides `request` with this thread's instance of `active`'s module and hands the
/// decision to `use_decision` (borrowed: the buffer is reused by the next request).
pub fn decide<P: RequestParts + ?Sized, R>(
    active: &Active,
    request: &P,
    use_decision: impl FnOnce(&Decision) -> R,
) -> Result<R, HostError> {
    SLOT.with(|slot| {
        let mut slot = slot.borrow_mut();
        let slot = &mut *slot;
        if slot.generation != active.generation
            || slot.tier != active.tier()
            || slot.instance.is_none()
        {
            slot.instance = None;
            let module = active.module();
            slot.instance = Some(module.instantiate()?);
            slot.generation = active.generation;
            slot.tier = module.tier();
        }
        let Some(instance) = slot.instance.as_mut() else {
            return Err(HostError::Instantiate("no instance".into()));
        };
        match instance.decide_into(request, &mut slot.decision) {
            Ok(()) => Ok(use_decision(&slot.decision)),
            Err(error) => {
                // After a trap the instance's state is not to be trusted: start afresh.
                slot.instance = None;
                Err(error)
            }
        }
    })
}
