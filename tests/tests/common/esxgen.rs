//! Writers of ESXi snapshot deltas (COWD, seSparse) for tests; filled in by the ESX work.
