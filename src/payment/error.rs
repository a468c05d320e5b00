//! Errors of the payment adapter. Messages carry context (mint, action, amounts) but never a token, a proof
//! or a secret: `Rejected` messages go back to the requester and every message may be logged.

use crate::lease::ports::{FailureKind, PortError};
use crate::protocol::ErrorCode;

#[derive(Debug, thiserror::Error)]
pub enum PaymentError {
    /// The token cannot be parsed, is empty, or carries conditions we cannot meet.
    #[error("invalid token: {reason}")]
    InvalidToken { reason: String },
    #[error("mint {mint} is not accepted")]
    MintNotAllowed { mint: String },
    #[error("unit {unit} is not supported (only {expected})")]
    UnitNotSupported { unit: String, expected: String },
    #[error("token already spent at {mint}")]
    TokenSpent { mint: String },
    /// The mint answered and refused the token (bad signature, unknown keyset, unmet lock, …).
    #[error("mint {mint} refused the token: {reason}")]
    TokenRefused { mint: String, reason: String },
    /// The mint refused an operation on our own ecash (send, check); not the requester's fault.
    #[error("mint {mint} refused {action}: {reason}")]
    MintRefused { mint: String, action: &'static str, reason: String },
    /// No answer, a timeout or a 5xx: the outcome is unknown and worth retrying.
    #[error("mint {mint} unavailable during {action}: {reason}")]
    MintUnavailable { mint: String, action: &'static str, reason: String },
    #[error("insufficient funds at {mint}: {available} sat spendable, {requested} sat requested")]
    InsufficientFunds { mint: String, available: u64, requested: u64 },
    #[error("wallet storage failed during {action}: {reason}")]
    Storage { action: &'static str, reason: String },
    #[error("wallet setup failed: {reason}")]
    Setup { reason: String },
}

impl PaymentError {
    pub fn kind(&self) -> FailureKind {
        match self {
            PaymentError::InvalidToken { .. } | PaymentError::TokenRefused { .. } => {
                FailureKind::Rejected(ErrorCode::InvalidToken)
            }
            PaymentError::MintNotAllowed { .. } => FailureKind::Rejected(ErrorCode::MintNotAllowed),
            PaymentError::UnitNotSupported { .. } => FailureKind::Rejected(ErrorCode::UnitNotSupported),
            PaymentError::TokenSpent { .. } => FailureKind::Rejected(ErrorCode::TokenSpent),
            PaymentError::MintUnavailable { .. } => FailureKind::Transient,
            PaymentError::MintRefused { .. }
            | PaymentError::InsufficientFunds { .. }
            | PaymentError::Storage { .. }
            | PaymentError::Setup { .. } => FailureKind::Permanent,
        }
    }

    /// Classify an error of cdk. `action` names what we were doing ("redeem", "refund", "check state"…);
    /// for "redeem", a refusal by the mint is the token's fault, otherwise ours.
    pub(crate) fn from_cdk(mint: &str, action: &'static str, err: cdk::Error) -> PaymentError {
        use cdk::Error as E;
        let mint = mint.to_string();
        let reason = err.to_string();
        match err {
            E::TokenAlreadySpent => PaymentError::TokenSpent { mint },
            E::InsufficientFunds => PaymentError::InsufficientFunds { mint, available: 0, requested: 0 },
            E::UnsupportedUnit | E::UnitMismatch | E::MultipleUnits => {
                PaymentError::UnitNotSupported { unit: "other".into(), expected: "sat".into() }
            }
            E::Database(_) => PaymentError::Storage { action, reason },
            // Ambiguous: the mint may or may not have acted; the caller retries or checks token state.
            E::HttpError(None, _)
            | E::Timeout
            | E::CouldNotGetMintInfo
            | E::TokenPending
            | E::ConcurrentUpdate
            | E::SerdeJsonError(_)
            | E::InvalidMintResponse(_)
            | E::Internal => PaymentError::MintUnavailable { mint, action, reason },
            // 408 Request Timeout and 429 Too Many Requests: the mint is busy, not refusing the token.
            E::HttpError(Some(status), _) if !(400..500).contains(&status) || matches!(status, 408 | 429) => {
                PaymentError::MintUnavailable { mint, action, reason }
            }
            _ if action == "redeem" => PaymentError::TokenRefused { mint, reason },
            _ => PaymentError::MintRefused { mint, action, reason },
        }
    }
}

impl From<PaymentError> for PortError {
    fn from(e: PaymentError) -> PortError {
        PortError { kind: e.kind(), message: e.to_string() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_map_to_port_codes() {
        let spent = PaymentError::from_cdk("http://m", "redeem", cdk::Error::TokenAlreadySpent);
        assert_eq!(spent.kind(), FailureKind::Rejected(ErrorCode::TokenSpent));
        let down = PaymentError::from_cdk("http://m", "redeem", cdk::Error::HttpError(None, "refused".into()));
        assert_eq!(down.kind(), FailureKind::Transient);
        let e500 = PaymentError::from_cdk("http://m", "redeem", cdk::Error::HttpError(Some(502), "bad gw".into()));
        assert_eq!(e500.kind(), FailureKind::Transient);
        for busy in [408, 429] {
            let e = PaymentError::from_cdk("http://m", "redeem", cdk::Error::HttpError(Some(busy), "slow".into()));
            assert_eq!(e.kind(), FailureKind::Transient, "{busy}");
        }
        let bad = PaymentError::from_cdk("http://m", "redeem", cdk::Error::HttpError(Some(400), "no".into()));
        assert_eq!(bad.kind(), FailureKind::Rejected(ErrorCode::InvalidToken));
        let ours = PaymentError::from_cdk("http://m", "refund", cdk::Error::HttpError(Some(400), "no".into()));
        assert_eq!(ours.kind(), FailureKind::Permanent);
        let p: PortError = PaymentError::MintNotAllowed { mint: "https://x".into() }.into();
        assert_eq!(p.kind, FailureKind::Rejected(ErrorCode::MintNotAllowed));
        assert!(p.message.contains("https://x"));
    }
}
