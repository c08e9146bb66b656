//! The `pool` channel's requests.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::PoolService;
use super::state::Holder;
use crate::daemon::conn::session::Session;
use crate::protocol::event::EventData;
use crate::protocol::pool::{PoolChannel, PoolRequest, PoolResponse};
use crate::protocol::{Channel, WireError};

pub(crate) async fn serve(mut session: Session<PoolChannel>, service: Arc<PoolService>, holder: Holder) {
    let stop = session.shared().stop.clone();
    while let Some(request) = session.next_request().await {
        let response = handle(&service, request, &holder, &stop).await.unwrap_or_else(PoolResponse::Error);
        if session.send(&response).await.is_err() {
            // A take whose answer never reached its taker is undone: nobody
            // else knows the lease, and the resource is untouched.
            if let PoolResponse::Taken(lease) = &response {
                service.untake(&lease.lease);
            }
            break;
        }
    }
}

async fn handle(
    service: &PoolService,
    request: PoolRequest,
    holder: &Holder,
    stop: &CancellationToken,
) -> Result<PoolResponse, WireError> {
    Ok(match request {
        PoolRequest::Status { pool } => PoolResponse::Status(service.status(pool.as_deref())?),
        PoolRequest::Take { pool, timeout_ms } => {
            let taken = service.take(&pool, timeout_ms, holder, stop).await?;
            let event = EventData::PoolTake { pool, lease: taken.lease.to_string(), warm: taken.warm };
            service.events.publish(Channel::Pool, event);
            PoolResponse::Taken(taken)
        }
        PoolRequest::Release { lease, reuse } => {
            let released = service.release(&lease, reuse)?;
            let event = EventData::PoolRelease { pool: released.pool.clone(), lease: lease.to_string() };
            service.events.publish(Channel::Pool, event);
            PoolResponse::Released { lease, outcome: released.outcome, reason: released.reason }
        }
        PoolRequest::Leases { pool } => PoolResponse::Leases { leases: service.leases(pool.as_deref())? },
        PoolRequest::Warm { pool, size } => {
            let previous = service.warm(&pool, size)?;
            PoolResponse::TargetSet { pool, target: size, previous }
        }
        PoolRequest::Drain { pool } => {
            let removed = service.drain(&pool)?;
            PoolResponse::Drained { pool, removed }
        }
        PoolRequest::Define { definition } => {
            let (pool, source, changed) = service.define(definition)?;
            PoolResponse::Defined { pool, source, changed }
        }
        PoolRequest::Undefine { pool } => {
            let source = service.undefine(&pool)?;
            PoolResponse::Undefined { pool, source }
        }
    })
}
