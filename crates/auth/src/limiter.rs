//! Failed-login counting in fixed windows, checked before any password
//! hashing so a flood of bad passwords costs almost nothing.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const MAX_KEYS: usize = 100_000;

pub struct Limiter {
    max: u32,
    window: Duration,
    failures: Mutex<HashMap<String, (u32, Instant)>>,
}

impl Limiter {
    pub fn new(max: u32, window: Duration) -> Limiter {
        Limiter { max, window, failures: Mutex::new(HashMap::new()) }
    }

    /// Whether `key` has used up its failures in the current window.
    pub fn blocked(&self, key: &str) -> bool {
        let map = self.failures.lock().unwrap();
        matches!(map.get(key), Some((n, start)) if *n >= self.max && start.elapsed() < self.window)
    }

    pub fn fail(&self, key: &str) {
        let mut map = self.failures.lock().unwrap();
        if map.len() >= MAX_KEYS {
            let window = self.window;
            map.retain(|_, (_, start)| start.elapsed() < window);
        }
        let entry = map.entry(key.to_string()).or_insert((0, Instant::now()));
        if entry.1.elapsed() >= self.window {
            *entry = (0, Instant::now());
        }
        entry.0 += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_after_max_failures() {
        let l = Limiter::new(2, Duration::from_secs(60));
        assert!(!l.blocked("a"));
        l.fail("a");
        assert!(!l.blocked("a"));
        l.fail("a");
        assert!(l.blocked("a"));
        assert!(!l.blocked("b"));
        let short = Limiter::new(1, Duration::from_millis(1));
        short.fail("x");
        std::thread::sleep(Duration::from_millis(5));
        assert!(!short.blocked("x"));
    }
}
