"""The health service: active monitors of GSLB members, sharded across replicas."""
