"""The CNI plugin `xpunet-cni` (CNI spec 1.1), a client of the datapath's infra API.

Kept import-light: the plugin is exec'ed once per pod and verb.
"""
