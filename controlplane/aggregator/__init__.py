"""The aggregation service: answers aggregate routes by calling their parts in parallel.

Stateless: everything a request needs arrives with it (the composition in a header the
gateway's route sets), so replicas are interchangeable and the service scales by adding
them. Nothing here imports Envoy protobufs or the policy store.
"""
