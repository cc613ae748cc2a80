"""qtd.engine"""
