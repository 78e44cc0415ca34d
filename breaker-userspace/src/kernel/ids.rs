//! Upstream ids by name. Id 0 is the default policy; a configured upstream keeps
//! its id for as long as its name stays in the config, across restarts and
//! reloads, because `UPSTREAM_NAMES` (pinned) remembers whose id is whose. Its
//! state word and counters live at that id, so they carry on too.
use std::collections::HashMap;

use aya::{
    maps::{Array, Map, MapData, PerCpuArray, PerCpuValues},
    Ebpf,
};
use breaker_common::abi::{map_names, Counters, UpstreamName};

use super::{map_err, typed_map, KernelError};
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
            .set(id, zero_counters()?, 0)
            .map_err(map_err(map_names::COUNTERS))?;
    }
    let freed = had.into_values().collect();
    Ok((ids, freed))
}

fn zero_counters() -> Result<PerCpuValues<Counters>, KernelError> {
    let cpus =
        aya::util::nr_cpus().map_err(|(_, e)| KernelError::Ids(format!("counting CPUs: {e}")))?;
    PerCpuValues::try_from(vec![Counters::default(); cpus])
        .map_err(|e| KernelError::Ids(format!("zero counters: {e}")))
}

/// Frees `id`: no name, a CLOSED word, zero counters. `counters` is the pinned
/// COUNTERS map (the loaded one is held by the daemon's counter table).
pub fn clear(
    ebpf: &mut Ebpf,
    states: &StateTable,
    counters: &std::path::Path,
    id: u32,
) -> Result<(), KernelError> {
    let mut names: Array<_, UpstreamName> = typed_map(ebpf, map_names::UPSTREAM_NAMES)?;
    names
        .set(id, UpstreamName::default(), 0)
        .map_err(map_err(map_names::UPSTREAM_NAMES))?;
    states.reset(id);
    let data = MapData::from_pin(counters).map_err(map_err(map_names::COUNTERS))?;
    let mut counters: PerCpuArray<_, Counters> =
        PerCpuArray::try_from(Map::PerCpuArray(data)).map_err(map_err(map_names::COUNTERS))?;
    let cpus =
        aya::util::nr_cpus().map_err(|(_, e)| KernelError::Ids(format!("counting CPUs: {e}")))?;
    let zeros = PerCpuValues::try_from(vec![Counters::default(); cpus])
        .map_err(|e| KernelError::Ids(format!("zero counters: {e}")))?;
    counters
        .set(id, zeros, 0)
        .map_err(map_err(map_names::COUNTERS))
}
