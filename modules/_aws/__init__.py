"""The shared AWS library of the modules, owned by no service: tags and the create token
(`tags`), CIDR forms (`cidr`), EC2 waiters (`waiters`), policy documents (`policy`), the
region column (`region`) and columns that are an API's attributes (`attributes`). A module
imports these, never another module's helpers."""
