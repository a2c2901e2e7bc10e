//! A byte ring buffer that keeps the most recent `capacity` bytes.

use std::collections::VecDeque;

pub struct Ring {
    buf: VecDeque<u8>,
    capacity: usize,
}

impl Ring {
    pub fn new(capacity: usize) -> Self {
        // Grows with use: most consoles never fill the whole ring, and a
        // supervisor of hundreds of VMs should not reserve it up front.
        Ring { buf: VecDeque::new(), capacity }
    }

    pub fn push(&mut self, data: &[u8]) {
        let data = if data.len() > self.capacity { &data[data.len() - self.capacity..] } else { data };
        let overflow = (self.buf.len() + data.len()).saturating_sub(self.capacity);
        self.buf.drain(..overflow);
        self.buf.extend(data);
    }

    pub fn snapshot(&self) -> Vec<u8> {
        let (a, b) = self.buf.as_slices();
        [a, b].concat()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_bytes() {
        let mut r = Ring::new(4);
        r.push(b"ab");
        r.push(b"cde");
        assert_eq!(r.snapshot(), b"bcde");
        r.push(b"0123456789");
        assert_eq!(r.snapshot(), b"6789");
    }
}
