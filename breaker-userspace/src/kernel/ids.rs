//! Upstream ids by name. Id 0 is the default policy; a configured upstream keeps
//! its id for as long as its name stays in the config, across restarts and
//! reloads, because `UPSTREAM_NAMES` (pinned) remembers whose id is whose. Its
//! state word, counters and connect-time histogram live at that id, so they
//! carry on too.
use std::collections::HashMap;

use aya::{
    maps::{Array, Map, MapData, PerCpuArray, PerCpuValues},
    Ebpf,
};
use breaker_common::abi::{map_names, ConnectDurations, Counters, ExtraCounters, UpstreamName};

use super::{map_err, pins::PinFolder, typed_map, KernelError};
use crate::{config::Config, state::StateTable};

/// Ids for the config's upstreams (in config order), and the ids of upstreams
/// that left the config, to clear once no program of the old config runs.
/// A new upstream takes the lowest id nobody had before this load, so a program
/// of the old config still running cannot count into it.
pub fn assign(
    ebpf: &mut Ebpf,
    config: &Config,
    slots: u32,
) -> Result<(Vec<u32>, Vec<u32>), KernelError> {
    let mut names: Array<_, UpstreamName> = typed_map(ebpf, map_names::UPSTREAM_NAMES)?;
    let mut had: HashMap<Vec<u8>, u32> = HashMap::new();
    for id in 1..slots {
        let name = names
            .get(&id, 0)
            .map_err(map_err(map_names::UPSTREAM_NAMES))?;
        if name.len > 0 {
            had.insert(name.as_bytes().to_vec(), id);
        }
    }
    let taken: std::collections::HashSet<u32> = had.values().copied().collect();
    let mut free = (1..slots).filter(|id| !taken.contains(id));
    let mut ids = Vec::with_capacity(config.upstreams.len());
    let mut fresh = Vec::new();
    for up in &config.upstreams {
        let id = match had.remove(up.name.as_bytes()) {
            Some(id) => id,
            None => {
                let id = free.next().ok_or_else(|| {
                    KernelError::Ids(format!(
                        "no free id for upstream {:?} among {} (an id a removed upstream had is given out again only by the next load): remove upstreams in one reload and add new ones in the next",
                        up.name, slots
                    ))
                })?;
                fresh.push(id);
                id
            }
        };
        let name = UpstreamName::new(&up.name)
            .ok_or_else(|| KernelError::Ids(format!("upstream name {:?} is too long", up.name)))?;
        names
            .set(id, name, 0)
            .map_err(map_err(map_names::UPSTREAM_NAMES))?;
        ids.push(id);
    }
    // A new upstream starts CLOSED with zero counters, whatever its id held
    // before (a stale outcome of an upstream removed long ago, say).
    for id in fresh {
        let mut states: Array<_, u64> = typed_map(ebpf, map_names::UPSTREAM_STATES)?;
        states
            .set(id, 0, 0)
            .map_err(map_err(map_names::UPSTREAM_STATES))?;
        let mut counters: PerCpuArray<_, Counters> = typed_map(ebpf, map_names::COUNTERS)?;
        counters
            .set(id, zeros()?, 0)
            .map_err(map_err(map_names::COUNTERS))?;
        let mut durations: PerCpuArray<_, ConnectDurations> =
            typed_map(ebpf, map_names::CONNECT_DURATIONS)?;
        durations
            .set(id, zeros()?, 0)
            .map_err(map_err(map_names::CONNECT_DURATIONS))?;
        let mut extra: PerCpuArray<_, ExtraCounters> = typed_map(ebpf, map_names::EXTRA_COUNTERS)?;
        extra
            .set(id, zeros()?, 0)
            .map_err(map_err(map_names::EXTRA_COUNTERS))?;
    }
    let freed = had.into_values().collect();
    Ok((ids, freed))
}

/// A zero value for every CPU.
fn zeros<T: aya::Pod + Default>() -> Result<PerCpuValues<T>, KernelError> {
    let cpus =
        aya::util::nr_cpus().map_err(|(_, e)| KernelError::Ids(format!("counting CPUs: {e}")))?;
    PerCpuValues::try_from(vec![T::default(); cpus])
        .map_err(|e| KernelError::Ids(format!("zero counters: {e}")))
}

/// Zeroes `id` in the pinned per-CPU map `name` (the loaded one is held by the
/// daemon's counter table).
fn zero_pinned<T: aya::Pod + Default>(
    pins: &PinFolder,
    name: &'static str,
    id: u32,
) -> Result<(), KernelError> {
    let data = MapData::from_pin(pins.map(name)).map_err(map_err(name))?;
    let mut map: PerCpuArray<_, T> =
        PerCpuArray::try_from(Map::PerCpuArray(data)).map_err(map_err(name))?;
    map.set(id, zeros()?, 0).map_err(map_err(name))
}

/// Frees `id`: no name, a CLOSED word, zero counters (extra ones too) and histogram.
pub fn clear(
    ebpf: &mut Ebpf,
    states: &StateTable,
    pins: &PinFolder,
    id: u32,
) -> Result<(), KernelError> {
    let mut names: Array<_, UpstreamName> = typed_map(ebpf, map_names::UPSTREAM_NAMES)?;
    names
        .set(id, UpstreamName::default(), 0)
        .map_err(map_err(map_names::UPSTREAM_NAMES))?;
    states.reset(id);
    zero_pinned::<Counters>(pins, map_names::COUNTERS, id)?;
    zero_pinned::<ConnectDurations>(pins, map_names::CONNECT_DURATIONS, id)?;
    zero_pinned::<ExtraCounters>(pins, map_names::EXTRA_COUNTERS, id)
}
