/*
 * topo.c - what the machine looks like: cores, caches, NUMA nodes.
 *
 * The exchange engine needs the size of the last-level cache and how many
 * cores share it: a copy larger than a core's share of the LLC would only
 * evict useful lines, so it goes non-temporal. The frame pool needs the
 * number of NUMA nodes, to keep frames local to the faulting thread.
 *
 * hwloc answers the cache questions and libnuma the node questions. The
 * topology is read once, lazily, with hwloc limited to caches and cores (no
 * I/O devices), because hwloc's full discovery costs milliseconds that a
 * preloaded library should not add to every program's start. A machine on
 * which either library fails is described as one node with an unknown LLC,
 * and everything still works; single-node machines work unchanged. The
 * cpu-to-node map is read once too, into a table: the fault service asks it
 * on every hugepage fault and must not call into libnuma, which allocates.
 */
#include "config.h"

#include <hwloc.h>
#include <numa.h>
#include <unistd.h>

#include "internal.h"

#define TOPO_MAX_CPUS 4096

static struct topo topo_info;
/* cpu -> node, read once: numa_node_of_cpu() allocates on every call, and
 * the fault service must not call malloc. */
static uint16_t topo_cpu_node[TOPO_MAX_CPUS];
static pthread_once_t topo_once = PTHREAD_ONCE_INIT;

/* Fills llc_bytes and llc_cpus from the deepest cache above core 0. */
static void topo_read_caches(void)
{
	hwloc_topology_t t;
	hwloc_obj_t pu, obj;

	if (hwloc_topology_init(&t) < 0)
		return;
	hwloc_topology_set_io_types_filter(t, HWLOC_TYPE_FILTER_KEEP_NONE);
	hwloc_topology_set_icache_types_filter(t, HWLOC_TYPE_FILTER_KEEP_NONE);
	if (hwloc_topology_load(t) < 0)
		goto out;
	topo_info.cpus = (unsigned)hwloc_get_nbobjs_by_type(t, HWLOC_OBJ_PU);
	pu = hwloc_get_obj_by_type(t, HWLOC_OBJ_PU, 0);
	for (obj = pu; obj; obj = obj->parent) {
		if (hwloc_obj_type_is_dcache(obj->type) && obj->attr) {
			topo_info.llc_bytes = (size_t)obj->attr->cache.size;
			topo_info.llc_cpus = (unsigned)hwloc_bitmap_weight(obj->cpuset);
		}
	}
out:
	hwloc_topology_destroy(t);
}

static void topo_read(void)
{
	long n = sysconf(_SC_NPROCESSORS_ONLN);

	topo_info.cpus = n > 0 ? (unsigned)n : 1;
	topo_info.numa_nodes = 1;
	topo_read_caches();
	if (!topo_info.llc_cpus)
		topo_info.llc_cpus = topo_info.cpus ? topo_info.cpus : 1;
	if (numa_available() >= 0 && numa_num_configured_nodes() > 0)
		topo_info.numa_nodes = (unsigned)numa_num_configured_nodes();
	if (topo_info.numa_nodes > 1) {
		for (int cpu = 0; cpu < TOPO_MAX_CPUS; cpu++) {
			int node = numa_node_of_cpu(cpu);

			topo_cpu_node[cpu] = (uint16_t)(node < 0 ? 0 : node);
		}
	}
}

const struct topo *topo_get(void)
{
	pthread_once(&topo_once, topo_read);
	return &topo_info;
}

int topo_node_of_cpu(int cpu)
{
	if (topo_get()->numa_nodes <= 1 || cpu < 0 || cpu >= TOPO_MAX_CPUS)
		return 0;
	return topo_cpu_node[cpu];
}
