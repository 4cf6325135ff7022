//! Circuit breakers for outbound APIs (to be written).
