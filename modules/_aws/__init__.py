"""The shared AWS library of the modules, owned by no service: tags and the create token
(`tags`), CIDR forms (`cidr`), EC2 waiters (`waiters`), policy documents (`policy`), the
region column (`region`), columns that are an API's attributes (`attributes`), CHECKs of a
column that holds one of a list of values (`checks`) and the parts of an ARN (`arns`). A
module imports these, never another module's helpers."""
