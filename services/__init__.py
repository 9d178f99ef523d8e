"""hetlora's deployable layer: the `hetlora` command line and (in later releases) the gRPC services.

Services depend on the libraries (`trainer`, `secure_agg`); the libraries never import services.
"""
