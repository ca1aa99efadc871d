//! Fault injection: per-account API faults and emulator-wide token-endpoint faults.

use std::time::Duration;

/// Which injected fault shaped a call (recorded in the ledger).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FaultKind {
    /// The call was answered with the provider's rate-limit shape.
    RateLimited,
    /// The call was answered with a 5xx.
    ServerError,
    /// The call was held back before being processed.
    Delayed,
    /// The connection was closed without a response; nothing was processed.
    ConnectionReset,
    /// The write was committed, then the connection was closed without a response.
    ResponseLost,
    /// The token request was held back before being processed.
    TokenHang,
    /// The refresh was never answered (and not processed).
    TokenTimeout,
}

/// Pending API faults of one account (upstream subject).
#[derive(Default)]
pub struct ApiFaults {
    /// Calls that pass untouched before the armed faults apply.
    pub skip: u32,
    /// The call being processed was one of the skipped ones.
    pub skipping_current: bool,
    pub rate_limit: u32,
    pub retry_after: Duration,
    pub server_error: u32,
    pub delay: u32,
    pub delay_for: Duration,
    pub reset: u32,
    pub lose_write_response: u32,
}

/// What the faults decided for one API call, before it is processed.
#[derive(Default)]
pub struct ApiFaultPlan {
    pub delay: Option<Duration>,
    pub action: Option<ApiFaultAction>,
}

pub enum ApiFaultAction {
    Reset,
    ServerError,
    RateLimited(Duration),
}

fn take(n: &mut u32) -> bool {
    if *n > 0 {
        *n -= 1;
        true
    } else {
        false
    }
}

impl ApiFaults {
    /// Consumes the faults that apply to the next call. A delay combines with any
    /// action; of the actions, a reset wins over a 5xx, which wins over a rate limit.
    pub fn take(&mut self) -> ApiFaultPlan {
        self.skipping_current = take(&mut self.skip);
        if self.skipping_current {
            return ApiFaultPlan::default();
        }
        let delay = take(&mut self.delay).then_some(self.delay_for);
        let action = if take(&mut self.reset) {
            Some(ApiFaultAction::Reset)
        } else if take(&mut self.server_error) {
            Some(ApiFaultAction::ServerError)
        } else if take(&mut self.rate_limit) {
            Some(ApiFaultAction::RateLimited(self.retry_after))
        } else {
            None
        };
        ApiFaultPlan { delay, action }
    }

    /// Consumes one "lose the response of a committed write" fault.
    pub fn take_lose_write(&mut self) -> bool {
        !self.skipping_current && take(&mut self.lose_write_response)
    }
}

/// Pending token-endpoint faults of an emulator.
#[derive(Default)]
pub struct TokenFaults {
    pub fail_refresh: u32,
    pub hang_next: Option<Duration>,
    pub timeout_refresh: u32,
    pub lose_refresh_response: u32,
}

/// What the faults decided for one token request.
#[derive(Default)]
pub struct TokenFaultPlan {
    pub hang: Option<Duration>,
    pub timeout: bool,
    pub fail: bool,
    pub lose_response: bool,
}

impl TokenFaults {
    /// Consumes the faults that apply to the next token request.
    pub fn take(&mut self, is_refresh: bool) -> TokenFaultPlan {
        let hang = self.hang_next.take();
        if !is_refresh {
            return TokenFaultPlan {
                hang,
                ..TokenFaultPlan::default()
            };
        }
        let timeout = take(&mut self.timeout_refresh);
        let fail = !timeout && take(&mut self.fail_refresh);
        let lose_response = !timeout && !fail && take(&mut self.lose_refresh_response);
        TokenFaultPlan {
            hang,
            timeout,
            fail,
            lose_response,
        }
    }
}
