"""The provider side: status machine, signing, dialects, hosts, the provider client, the /v1 client, the simulator."""
