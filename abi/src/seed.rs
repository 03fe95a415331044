//! Seed derivation: one run seed, every random stream of the run derived
//! from it here, by the VMM, the guest and the host-thread platform alike,
//! so that one seed draws the same choices wherever the lock code runs.

/// splitmix64's output function of `x` (Steele, Lea, Flood 2014): a
/// bijection that spreads nearby inputs over the whole range.
pub const fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A random stream of one run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    /// CPU `n`'s own stream in the lock code (race-window choices,
    /// simulated interrupts, think times): the guest's vCPU `n` and the
    /// host platform's thread `n` draw the same one.
    LockCpu(u32),
    /// The VMM's per-vCPU stream (spurious wakeups of vCPU `n`'s waits).
    VmmVcpu(u32),
    /// The VMM's preemptor (random and holder stall times and lengths).
    Preemptor,
    /// vCPU `n`'s choices at the sites of a kernel build (`preempt.sites`):
    /// a stream of its own, so enabling sites leaves every other choice of
    /// the run as it was.
    KernelSites(u32),
    /// The PCT change points of a run (`preempt.site_mode = "pct"`): one
    /// stream for the whole run, read by every vCPU as a pure function
    /// (`sites::pct_change_point`), so all agree on the points.
    SitePct,
}

impl Stream {
    /// A distinct tag per stream, so no two streams of one seed coincide.
    const fn tag(self) -> u64 {
        match self {
            Stream::LockCpu(n) => 1 << 32 | n as u64,
            Stream::VmmVcpu(n) => 2 << 32 | n as u64,
            Stream::Preemptor => 3 << 32,
            Stream::KernelSites(n) => 4 << 32 | n as u64,
            Stream::SitePct => 5 << 32,
        }
    }
}

/// The seed of `stream` in a run with seed `run_seed`: never 0 (xorshift
/// generators stay at 0 forever).
pub const fn stream_seed(run_seed: u64, stream: Stream) -> u64 {
    splitmix64(run_seed ^ splitmix64(stream.tag())) | 1
}

/// The lock code's per-CPU generator (xorshift64, shifts 13/7/17, Marsaglia
/// 2003): the next state from `state` (never 0 from a non-zero state),
/// which is also the value drawn. The guest, the host-thread platform and
/// the test platform all draw with it from [`stream_seed`].
pub const fn next_draw(state: u64) -> u64 {
    let mut x = state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}

/// The seed of repeat `r` of a matrix point whose seed is `base`: repeat 0
/// keeps `base`, the others are independent streams. Below 2^63: TOML
/// integers are i64, and a recorded seed must go back into a config to
/// reproduce its run.
pub const fn repeat_seed(base: u64, r: u32) -> u64 {
    if r == 0 {
        return base;
    }
    splitmix64(base.wrapping_add((r as u64 - 1).wrapping_mul(0x9e37_79b9_7f4a_7c15))) >> 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_distinct_deterministic_and_nonzero() {
        let streams = [
            Stream::LockCpu(0),
            Stream::LockCpu(1),
            Stream::VmmVcpu(0),
            Stream::VmmVcpu(1),
            Stream::Preemptor,
            Stream::KernelSites(0),
            Stream::SitePct,
        ];
        for seed in [0u64, 1, 9, u64::MAX] {
            let s: [u64; 7] = core::array::from_fn(|i| stream_seed(seed, streams[i]));
            for i in 0..s.len() {
                assert_ne!(s[i], 0);
                assert_eq!(s[i], stream_seed(seed, streams[i]), "deterministic");
                for j in i + 1..s.len() {
                    assert_ne!(s[i], s[j], "seed {seed}: {:?} and {:?} coincide", streams[i], streams[j]);
                }
            }
        }
        assert_ne!(stream_seed(1, Stream::Preemptor), stream_seed(2, Stream::Preemptor));
    }

    #[test]
    fn repeats_keep_the_base_then_differ_below_2_63() {
        assert_eq!(repeat_seed(9, 0), 9);
        let r: [u64; 4] = core::array::from_fn(|i| repeat_seed(9, i as u32));
        for i in 0..r.len() {
            assert!(r[i] < 1 << 63);
            for j in i + 1..r.len() {
                assert_ne!(r[i], r[j]);
            }
        }
        assert_ne!(repeat_seed(9, 1), repeat_seed(10, 1));
    }
}
