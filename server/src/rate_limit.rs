//! A token bucket per connection: how many messages a client may send, and when it is abuse.
//!
//! The bucket holds up to `burst` tokens and refills at `rate` per second; every frame takes
//! one. A frame that finds the bucket empty is refused, and the bucket goes into debt: a
//! client that keeps sending while refused digs deeper. Once the debt reaches another
//! `burst`, the client is not typing fast, it is flooding, and it is disconnected. A client
//! that pauses after the error pays its debt back at `rate` and carries on.

use std::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Go ahead.
    Allowed,
    /// Too fast: drop the frame; `first` is set for the first refusal in a row, the one
    /// worth an error frame (answering every refused frame would amplify a flood).
    Refused { first: bool },
    /// Sustained abuse: close the connection.
    Flooding,
}

#[derive(Debug, Clone)]
pub struct TokenBucket {
    /// Tokens per second; `None` when the limit is off.
    rate: Option<f64>,
    burst: f64,
    tokens: f64,
    refilled: Instant,
    refusing: bool,
}

impl TokenBucket {
    /// `rate` messages per second sustained, `burst` at once; a rate of 0 turns it off.
    pub fn new(rate: f64, burst: u32, now: Instant) -> TokenBucket {
        let burst = f64::from(burst.max(1));
        let rate = (rate > 0.0 && rate.is_finite()).then_some(rate);
        TokenBucket { rate, burst, tokens: burst, refilled: now, refusing: false }
    }

    /// Takes a token for one frame arriving at `now`.
    pub fn take(&mut self, now: Instant) -> Verdict {
        let Some(rate) = self.rate else { return Verdict::Allowed };
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        self.tokens = (self.tokens + elapsed * rate).min(self.burst);
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            self.refusing = false;
            return Verdict::Allowed;
        }
        if self.tokens <= -self.burst {
            return Verdict::Flooding;
        }
        let first = !self.refusing;
        self.refusing = true;
        Verdict::Refused { first }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_burst_passes_then_refusal_then_flood() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(10.0, 20, start);
        for _ in 0..20 {
            assert_eq!(bucket.take(start), Verdict::Allowed);
        }
        assert_eq!(bucket.take(start), Verdict::Refused { first: true });
        for _ in 0..18 {
            assert_eq!(bucket.take(start), Verdict::Refused { first: false });
        }
        assert_eq!(bucket.take(start), Verdict::Flooding);
    }

    #[test]
    fn the_sustained_rate_is_allowed_forever() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(10.0, 20, start);
        for step in 0..10_000u32 {
            let now = start + Duration::from_millis(100) * step;
            assert_eq!(bucket.take(now), Verdict::Allowed, "message {step}");
        }
    }

    #[test]
    fn a_pause_pays_the_debt_back() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(10.0, 20, start);
        for _ in 0..30 {
            bucket.take(start);
        }
        let later = start + Duration::from_secs(2);
        assert_eq!(bucket.take(later), Verdict::Allowed);
    }

    #[test]
    fn rate_zero_means_no_limit() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(0.0, 20, start);
        for _ in 0..100_000 {
            assert_eq!(bucket.take(start), Verdict::Allowed);
        }
    }
}
